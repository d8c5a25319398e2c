"""The weekly scheduler: which issue is due when, each decided once, one instance at a time."""
