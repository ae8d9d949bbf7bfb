-- Dead letters keep the raw payload once per message, capped, in a table of its own: one message of many
-- bad readings used to store its whole payload again in every one of its dead letters.
--
-- dead_letter_payloads: one row per distinct payload, keyed by the sha256 of the whole payload as received;
-- `payload` holds its first bytes (the collector keeps SANITEL_DEAD_LETTER_PAYLOAD_BYTES, 64 KiB by default),
-- `size` its full length. dead_letters: one row per rejected message or reading, referring to its payload.
-- Read both with:
--   SELECT d.*, p.payload, p.size FROM dead_letters d JOIN dead_letter_payloads p ON p.sha256 = d.payload_sha256
CREATE TABLE IF NOT EXISTS dead_letter_payloads (
    sha256             text PRIMARY KEY,         -- hex digest of the whole payload
    size               integer NOT NULL,         -- bytes of the whole payload
    payload            bytea NOT NULL,           -- its first bytes; size > length(payload) when capped
    first_received_at  timestamptz NOT NULL,
    last_received_at   timestamptz NOT NULL      -- retention drops a payload no dead letter refers to any more
);

ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS payload_sha256 text;

-- Move the payloads of existing dead letters (capped like the collector's default) and drop the column.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'dead_letters' AND column_name = 'payload') THEN
        UPDATE dead_letters SET payload_sha256 = encode(sha256(payload), 'hex') WHERE payload_sha256 IS NULL;
        INSERT INTO dead_letter_payloads (sha256, size, payload, first_received_at, last_received_at)
        SELECT DISTINCT ON (payload_sha256) payload_sha256, length(payload), substr(payload, 1, 65536),
               min(received_at) OVER w, max(received_at) OVER w
        FROM dead_letters
        WINDOW w AS (PARTITION BY payload_sha256)
        ORDER BY payload_sha256
        ON CONFLICT (sha256) DO NOTHING;
        ALTER TABLE dead_letters DROP COLUMN payload;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'dead_letters_payload_fk') THEN
        ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_payload_fk
            FOREIGN KEY (payload_sha256) REFERENCES dead_letter_payloads (sha256);
    END IF;
END
$$;

ALTER TABLE dead_letters ALTER COLUMN payload_sha256 SET NOT NULL;
-- the foreign key's checks and retention's "no dead letter refers to it" need this
CREATE INDEX IF NOT EXISTS dead_letters_payload_idx ON dead_letters (payload_sha256);
