-- A price per call (USD per request, decimal text), for endpoints billed per
-- call or per image: images, speech, transcriptions, moderations, rerank.
-- Empty = none (the model is billed per token only).
ALTER TABLE prices ADD COLUMN per_call TEXT NOT NULL DEFAULT '';
