"""Small shared helpers that are not about detection: files, CLI errors, lazy re-exports."""
