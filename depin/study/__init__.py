"""Studies on real geography with depin's own scheduler."""
