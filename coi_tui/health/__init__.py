"""Health and posture checks (`coi health`)."""
