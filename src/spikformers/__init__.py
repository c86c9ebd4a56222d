"""spikformers."""
