"""Audiences: who a campaign reaches — lists, segment filters, exclusions and suppressions."""
