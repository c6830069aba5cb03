"""Container images built on this machine from Debian's packages and the project's own caches (no registry)."""
