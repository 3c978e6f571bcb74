-- Rate limits, concurrency and spending budgets per API key and per user,
-- as JSON text: {"rpm":60,"tpm":100000,"concurrency":4,
-- "budget":5000000,"budget_period":"monthly"} (budget on keys only, units).
-- Empty = no limits.
ALTER TABLE api_keys ADD COLUMN limits TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN limits TEXT NOT NULL DEFAULT '';
