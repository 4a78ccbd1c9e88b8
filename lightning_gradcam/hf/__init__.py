"""The Hugging Face ``Trainer`` adapter (imports transformers: import it lazily)."""
