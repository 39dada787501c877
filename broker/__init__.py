"""Identity federation broker."""
