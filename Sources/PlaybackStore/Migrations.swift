/// The schema, as numbered steps. A step is applied once, in order, inside one transaction with
/// the others of the same start, under an advisory lock so that several daemons starting at once
/// do not race. Applied steps are never edited: a change is a new step.
enum Migrations {
    struct Step {
        var version: Int
        var name: String
        var statements: [String]
    }

    /// Key of the advisory lock held while migrating.
    static let lockKey: Int64 = 0x706C_6179_6261_636B  // "playback"

    static let steps: [Step] = [
        Step(version: 1, name: "catalog, users, devices, snapshots, history", statements: [
            """
            CREATE TABLE users (
                id           text PRIMARY KEY,
                display_name text,
                country      char(2),
                tier         text,
                created_at   timestamptz NOT NULL DEFAULT now()
            )
            """,
            """
            CREATE TABLE tracks (
                id          text PRIMARY KEY,
                title       text NOT NULL,
                artist      text NOT NULL,
                album       text,
                duration_ms bigint NOT NULL CHECK (duration_ms > 0),
                -- true: playable only in the countries listed in track_licenses
                restricted  boolean NOT NULL DEFAULT false
            )
            """,
            """
            CREATE TABLE track_licenses (
                track_id text NOT NULL REFERENCES tracks (id) ON DELETE CASCADE,
                country  char(2) NOT NULL,
                PRIMARY KEY (track_id, country)
            )
            """,
            """
            CREATE TABLE contexts (
                kind  text NOT NULL,
                id    text NOT NULL,
                title text,
                PRIMARY KEY (kind, id)
            )
            """,
            """
            CREATE TABLE context_tracks (
                kind       text NOT NULL,
                context_id text NOT NULL,
                position   int NOT NULL,
                track_id   text NOT NULL REFERENCES tracks (id) ON DELETE CASCADE,
                PRIMARY KEY (kind, context_id, position),
                FOREIGN KEY (kind, context_id) REFERENCES contexts (kind, id) ON DELETE CASCADE
            )
            """,
            """
            CREATE TABLE devices (
                user_id    text NOT NULL,
                device_id  text NOT NULL,
                name       text NOT NULL,
                kind       text NOT NULL,
                first_seen timestamptz NOT NULL,
                last_seen  timestamptz NOT NULL,
                PRIMARY KEY (user_id, device_id)
            )
            """,
            """
            CREATE TABLE playback_snapshots (
                user_id    text PRIMARY KEY,
                epoch      bigint NOT NULL,
                version    bigint NOT NULL,
                state      jsonb NOT NULL,
                updated_at timestamptz NOT NULL
            )
            """,
            """
            CREATE TABLE play_history (
                id          bigserial PRIMARY KEY,
                user_id     text NOT NULL,
                track_id    text NOT NULL,
                played_at   timestamptz NOT NULL,
                ended_at    timestamptz NOT NULL,
                ms_played   bigint NOT NULL CHECK (ms_played >= 0),
                context     text,
                device_id   text,
                device_kind text,
                end_reason  text NOT NULL CHECK (end_reason IN ('finished', 'skipped', 'transferred', 'stopped'))
            )
            """,
            "CREATE INDEX play_history_user_recent ON play_history (user_id, ended_at DESC, id DESC)",
        ]),
    ]
}
