"""Alert channels and message rendering."""
