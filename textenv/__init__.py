"""textenv."""
