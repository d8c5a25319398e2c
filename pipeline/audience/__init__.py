"""Who receives an issue: subscribers and their consent, segments, CSV import and export, opt-in."""
