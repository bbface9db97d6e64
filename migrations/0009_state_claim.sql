-- 0008: the atomic claim of an authorization `state` before its code is
-- sent to the PBX (one caller at a time may send it; a retryable failure
-- releases the claim, a crash lets it lapse). Same column as PostgreSQL's.

ALTER TABLE onboarding_flows ADD COLUMN exchange_claimed_until INTEGER;
