-- The run archive: one row per finished run, keyed like the run in the API
-- server (namespace, name = run id).
--
-- Text columns that lists compare or sort on are COLLATE "C": byte order,
-- as Go compares strings, so the list order and the keyset cursor match the
-- live index (apiserver/runindex.go) whatever the database's collation.
-- created_at is written at millisecond precision (the API's and the
-- cursor's); started_at and completed_at keep microseconds (metav1.MicroTime).

-- +goose Up
CREATE TABLE archived_runs (
    namespace    text COLLATE "C" NOT NULL,
    id           text COLLATE "C" NOT NULL,
    team_id      text COLLATE "C" NOT NULL,
    project_id   text COLLATE "C" NOT NULL,
    job_type     text COLLATE "C" NOT NULL,
    status       text COLLATE "C" NOT NULL,
    created_at   timestamptz NOT NULL,
    started_at   timestamptz,
    completed_at timestamptz,
    triggered_by text NOT NULL,
    notify       boolean NOT NULL,
    params       jsonb,
    progress     jsonb,
    result       jsonb,
    error        text NOT NULL,
    attempts     integer NOT NULL,
    reason       text NOT NULL,
    archived_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, id)
);

-- One index per list shape, in the order of the keyset walk: newest first,
-- ties by the greater id first.
CREATE INDEX archived_runs_team ON archived_runs
    (namespace, team_id, created_at DESC, id DESC);
CREATE INDEX archived_runs_team_project ON archived_runs
    (namespace, team_id, project_id, created_at DESC, id DESC);
CREATE INDEX archived_runs_team_job_type ON archived_runs
    (namespace, team_id, job_type, created_at DESC, id DESC);
CREATE INDEX archived_runs_team_status ON archived_runs
    (namespace, team_id, status, created_at DESC, id DESC);

-- Retention deletes by completed_at; the few rows without one (a run
-- archived before it finished) by created_at.
CREATE INDEX archived_runs_completed_at ON archived_runs (completed_at);
CREATE INDEX archived_runs_unfinished ON archived_runs (created_at)
    WHERE completed_at IS NULL;

-- +goose Down
DROP TABLE archived_runs;
