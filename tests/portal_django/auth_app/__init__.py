"""App label `auth_app`: the portal's PatientProfile (table auth_app_patientprofile)."""
