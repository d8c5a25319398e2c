"""What comes back after a send: provider events, the sender-reputation guard, campaign reports."""
