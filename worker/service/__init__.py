"""What other programs talk to: the webhook receiver."""
