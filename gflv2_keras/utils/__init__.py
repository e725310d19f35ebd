"""Small shared helpers that are not about detection (file publishing)."""
