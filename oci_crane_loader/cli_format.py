"""Text output of `oci-crane cache ls|verify|prune` (--json prints the reports' to_json() instead)."""

from __future__ import annotations

from .cache.listing import CacheEntry, CacheInfo
from .cache.prune import PruneReport
from .cache.verify import VerifyReport
from .progress import human


def _short(digest: str | None) -> str:
    return digest[:19] if digest else "(unreadable)"


def _directories(entry: CacheEntry) -> str:
    """The MODEL DIR column: "yes" only for a whole model; a filtered fetch's directory holds some files only."""
    found = ["yes"] if entry.has_model_dir else []
    if entry.filtered_dirs:
        found.append(f"filtered ({len(entry.filtered_dirs)})" if len(entry.filtered_dirs) > 1 else "filtered")
    if not found and entry.config_dirs:
        found.append("config only")
    return ", ".join(found) or "no"


def format_info(info: CacheInfo) -> str:
    rows = [("REFERENCE", "DIGEST", "MODEL DIR", "SIZE")]
    for entry in info.entries:
        model = _directories(entry)
        rows.append((entry.reference or "(no ref)", _short(entry.digest), model, human(entry.size)))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>10}".rstrip() for r in rows]
    lines.append(f"blobs: {info.blob_count} files, {human(info.blob_bytes)} in {info.root / 'blobs'}")
    return "\n".join(lines)


def format_verify(report: VerifyReport) -> str:
    lines = [f"{'DAMAGED':<8} {p.kind:<8} {p.path}: {p.detail}" for p in report.problems]
    lines.append(f"checked {report.blobs} blobs, {report.manifests} manifests, {report.refs} refs, "
                 f"{report.directories} model/config directories: "
                 + ("all intact" if report.ok else f"{len(report.problems)} damaged"))
    return "\n".join(lines)


def format_prune(report: PruneReport) -> str:
    verb = "would remove" if report.dry_run else "removed"
    lines = [f"{verb} {r.kind:<8} {r.path} ({human(r.bytes)})" for r in report.removed]
    lines += [f"skipped  blob     {r.path} (being downloaded by another process)" for r in report.skipped]
    lines.append(f"{'would free' if report.dry_run else 'freed'} {human(report.freed)} "
                 f"({len(report.removed)} entries)")
    return "\n".join(lines)
