"""Money rules of the quota side, each written once: the cap and near-cap rules (caps.py); what a
call costs stays in quota.pricing."""
