"""App label `donor`: the portal's Donation (table donor_donation)."""
