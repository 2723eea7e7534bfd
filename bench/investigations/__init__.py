"""One-off measurements behind the issues; see README.md here."""
