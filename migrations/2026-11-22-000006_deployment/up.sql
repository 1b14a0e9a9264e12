-- This deployment's identity: written into Apple's mdmInfo so every replica (and every restart)
-- presents the same owner to Apple. VPP_INSTANCE_ID overrides it.
CREATE TABLE deployment (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    instance_id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO deployment DEFAULT VALUES;
