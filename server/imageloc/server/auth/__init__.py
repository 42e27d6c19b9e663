"""Who is calling and what they may do: tokens, certificates, Glance's policies, the audit log."""
