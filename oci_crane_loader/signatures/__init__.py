"""Signature verification: `--verify-key` / OCI_CRANE_VERIFY_KEYS make a fetch refuse a model that no trusted key
signed, before any weight is downloaded (policy.py), reading cosign's signatures (cosign.py) with the keys
(keys.py); `oci-crane push --sign-key` writes them."""
