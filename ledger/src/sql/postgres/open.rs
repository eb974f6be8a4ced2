//! Opening a [`PostgresLedger`]: connecting, the format check before anything is written,
//! the schema and its migrations, and the check that the tables the ledger needs exist.

use super::*;

/// Connects once, within [`CONNECT_TIMEOUT`]; any failure is [`LedgerError::Unreachable`].
async fn connect_once(
    options: &PgConnectOptions,
    location: &str,
) -> Result<PgConnection, LedgerError> {
    let unreachable = |message: String| LedgerError::Unreachable {
        backend: BACKEND,
        location: location.to_owned(),
        message,
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// A pool of up to `max` connections working in `target`'s schema, committing
/// synchronously unless a transaction says otherwise, with `settings` (SQL `SET`s) applied.
async fn connect_pool(
    options: &PgConnectOptions,
    target: &Target,
    max: u32,
    settings: &str,
) -> Result<PgPool, LedgerError> {
    let setup: Arc<str> = format!(
        "SET search_path TO {}; {settings}; \
         SELECT CASE WHEN current_setting('synchronous_commit') = 'off' \
         THEN set_config('synchronous_commit', 'on', false) END",
        quote_ident(&target.schema)
    )
    .into();
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(CONNECT_TIMEOUT)
        .after_connect(move |conn, _meta| {
            let setup = Arc::clone(&setup);
            Box::pin(async move {
                // Unprepared (simple protocol): every statement in one round trip.
                conn.execute(&*setup).await?;
                Ok(())
            })
        })
        .connect_with(options.clone())
        .await
        .map_err(|e| LedgerError::Unreachable {
            backend: BACKEND,
            location: target.location.clone(),
            message: format!("cannot open the connection pool: {e}"),
        })
}

impl PostgresLedger {
    /// Opens the ledger `url` names (`postgres://...` or `postgresql://...`, optionally with
    /// `?schema=NAME`; default schema `cloacina`): creates the schema if missing, refuses a
    /// store of another format version untouched, applies the migrations.
    ///
    /// Errors: [`LedgerError::BadUrl`] or [`LedgerError::BadTenant`] (nothing contacted),
    /// [`LedgerError::Unreachable`] (no connection within 5 s),
    /// [`LedgerError::IncompatibleFormat`], [`LedgerError::Backend`].
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        let target = parse_url(url)?;
        let options =
            PgConnectOptions::from_str(&target.connect).map_err(|e| LedgerError::BadUrl {
                url: target.location.clone(),
                reason: e.to_string(),
            })?;
        let mut conn = connect_once(&options, &target.location).await?;
        let prepared = Self::prepare(&mut conn, &target).await;
        // The setup connection is done with either way; a failed goodbye changes nothing.
        let _ = conn.close().await;
        prepared?;

        // Every pooled connection works in the ledger's schema, and commits synchronously
        // unless a transaction says otherwise (a server default of `off` is raised to `on`;
        // stronger settings such as `remote_apply` are kept). Prepared statements are planned
        // on every execution: the ledger's tables grow from empty faster than autovacuum
        // re-analyzes them, and a plan cached while they were small scans every row once they
        // are large (measured on the workflow store: each write became O(executions); the
        // reactor ledger's appends measured the same with and without: 84k and 78k records/s).
        let pool = connect_pool(
            &options,
            &target,
            MAX_CONNECTIONS,
            "SET plan_cache_mode TO force_custom_plan",
        )
        .await?;
        // The workflow store's writes (batches from the runner's group commit, one per
        // connection at a time)
        // have connections of their own, where each statement is planned once and its plan
        // kept: planning was a third of the server's work per batch. A plan made while the
        // tables are small must stay cheap when they are large: scans and bitmap scans are
        // priced out, and every lookup the statements make carries `id = ANY(ids)`, so the
        // table side is primary-key probes; nested-loop and merge joins are priced out too,
        // so the batch's rows are joined through a hash, never rescanned per row (checked
        // with EXPLAIN on an empty and on a 200,000-row table).
        let workflow_writes = connect_pool(
            &options,
            &target,
            WORKFLOW_WRITE_CONNECTIONS,
            "SET plan_cache_mode TO force_generic_plan; SET enable_seqscan TO off; \
             SET enable_bitmapscan TO off; SET enable_mergejoin TO off; \
             SET enable_nestloop TO off",
        )
        .await?;
        Ok(Self {
            pool,
            workflow_writes,
            schema: target.schema,
            location: target.location,
            work: Arc::new(crate::workflows::WorkSignal::default()),
            listening: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The schema the ledger lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Closes the connection pools, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
        self.workflow_writes.close().await;
    }

    /// The tables or columns of [`EXPECTED`] missing from `schema`, as `table` or
    /// `table.column`.
    pub(super) async fn missing_tables(
        conn: &mut PgConnection,
        schema: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let present: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = $1",
        )
        .bind(schema)
        .fetch_all(&mut *conn)
        .await?;
        let mut missing = Vec::new();
        for (table, columns) in EXPECTED {
            if !present.iter().any(|(t, _)| t == table) {
                missing.push(format!("table `{table}`"));
                continue;
            }
            for column in *columns {
                if !present.iter().any(|(t, c)| t == table && c == column) {
                    missing.push(format!("column `{table}.{column}`"));
                }
            }
        }
        Ok(missing)
    }

    /// The format version stored in `schema`, if its `meta` table has one.
    pub(super) async fn stored_format(
        conn: &mut PgConnection,
        target: &Target,
    ) -> Result<Option<i64>, LedgerError> {
        let has_meta: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables \
             WHERE schemaname = $1 AND tablename = 'meta')",
        )
        .bind(&target.schema)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| setup_error(target, "cannot look for table `meta`", e))?;
        if !has_meta {
            return Ok(None);
        }
        let sql = format!(
            "SELECT value FROM {}.meta WHERE key = $1",
            quote_ident(&target.schema)
        );
        sqlx::query_scalar(&sql)
            .bind(FORMAT_KEY)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| setup_error(target, "cannot read the format version", e))
    }

    /// Checks the format version, then creates the schema, migrates it and records the
    /// version, on one connection.
    pub(super) async fn prepare(
        conn: &mut PgConnection,
        target: &Target,
    ) -> Result<(), LedgerError> {
        check_format(
            BACKEND,
            Self::stored_format(conn, target).await?,
            &target.location,
        )?;
        let schema = quote_ident(&target.schema);
        // Created only if missing: `CREATE SCHEMA IF NOT EXISTS` needs the CREATE privilege on
        // the database even when the schema exists. (`Executor` on the connection and
        // `run_direct` rather than `raw_sql(..).execute` and `run`: those make this future
        // fail sqlx's higher-ranked `Send` check.)
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
        )
        .bind(&target.schema)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| setup_error(target, "cannot look for the schema", e))?;
        if !exists {
            let create = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
            if let Err(e) = conn.execute(create.as_str()).await {
                // Two first opens at once can both try to create it: the loser's unique
                // violation means the schema is there.
                let raced = matches!(&e, sqlx::Error::Database(db)
                    if matches!(db.code().as_deref(), Some("23505" | "42P06")));
                if !raced {
                    return Err(setup_error(target, "cannot create the schema", e));
                }
            }
        }
        let search_path = format!("SET search_path TO {schema}");
        conn.execute(search_path.as_str())
            .await
            .map_err(|e| setup_error(target, "cannot set search_path", e))?;
        MIGRATOR.run_direct(conn).await.map_err(|e| {
            LedgerError::store(
                BACKEND,
                format!(
                    "cannot migrate schema `{}` at {}",
                    target.schema, target.location
                ),
                false,
                e,
            )
        })?;
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(FORMAT_KEY)
            .bind(i64::from(LEDGER_FORMAT_VERSION))
            .execute(&mut *conn)
            .await
            .map_err(|e| setup_error(target, "cannot record the format version", e))?;
        // Another build may have initialized the schema at the same moment.
        check_format(
            BACKEND,
            Self::stored_format(conn, target).await?,
            &target.location,
        )?;
        // The migration history can claim what the schema no longer has (a table dropped by
        // hand): refuse it now rather than at the first append.
        let missing = Self::missing_tables(conn, &target.schema)
            .await
            .map_err(|e| setup_error(target, "cannot list the ledger's tables", e))?;
        if !missing.is_empty() {
            return Err(LedgerError::Corrupt {
                backend: BACKEND,
                location: target.location.clone(),
                reason: format!(
                    "schema `{}` lacks {} (its migrations are recorded as applied)",
                    target.schema,
                    missing.join(", ")
                ),
            });
        }
        Ok(())
    }
}
