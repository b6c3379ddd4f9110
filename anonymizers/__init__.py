"""Pure anonymization core: IP/UA/language reduction, pseudonyms, k-anonymity, windows, DP."""
