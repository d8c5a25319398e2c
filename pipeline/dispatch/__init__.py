"""Sending a campaign: the plan, the campaign and its ledger, the send loop, courier and pacing."""
