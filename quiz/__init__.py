"""Quiz questions: fetched from a jService-compatible upstream and stored without duplicates."""
