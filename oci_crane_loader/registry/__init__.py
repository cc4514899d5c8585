"""Everything that talks to a registry: crane (the registry client), the ranged HTTP downloads, the credentials
file crane reads, a loopback registry for the demo and the tests, and which binary runs on this host."""
