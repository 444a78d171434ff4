"""What the commands and the server drive: generation (and editing), understanding,
conversation (prompt cache), the one ``MobileO`` model that shares them, and batch runs."""
