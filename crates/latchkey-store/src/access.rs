//! Storage of just-in-time access: vault access settings, access requests, their reviews
//! and grants. Written once for both backends like the SCIM module: the macro expands to
//! the same queries for SQLite and PostgreSQL.

macro_rules! access_queries {
    ($db:ty, $sql:path, $begin:expr, $lock:expr) => {
        use sqlx::{Pool, Row};

        use crate::{
            AccessRequestFilter, AccessRequestRow, AccessResource, AccessReviewRow, GrantFilter,
            GrantRow, ReviewOutcome, StoreError, StoreResult,
        };

        type DbRow = <$db as sqlx::Database>::Row;
        type Conn = <$db as sqlx::Database>::Connection;

        const REQUEST_COLUMNS: &str = "id, requester_id, requester, resources, duration, \
             reason, ticket, kind, approvals_required, status, created_at, expires_at, \
             decided_at, decided_by, grant_id";
        const REVIEW_COLUMNS: &str =
            "request_id, reviewer_id, reviewer, verdict, comment, created_at";
        const GRANT_COLUMNS: &str = "id, request_id, principal_id, principal, resources, approved_by, \
             reason, kind, starts_at, expires_at, revoked_at, revoked_by, revoke_reason";

        fn resources_from_text(text: &str) -> StoreResult<Vec<AccessResource>> {
            serde_json::from_str(text).map_err(|e| {
                StoreError::Corrupt(format!("stored access resources are not valid JSON: {e}"))
            })
        }

        fn resources_text(resources: &[AccessResource]) -> StoreResult<String> {
            serde_json::to_string(resources)
                .map_err(|e| StoreError::Corrupt(format!("cannot encode access resources: {e}")))
        }

        fn request_from_row(row: &DbRow) -> StoreResult<AccessRequestRow> {
            let resources: String = row.try_get("resources")?;
            Ok(AccessRequestRow {
                id: row.try_get("id")?,
                requester_id: row.try_get("requester_id")?,
                requester: row.try_get("requester")?,
                resources: resources_from_text(&resources)?,
                duration: row.try_get("duration")?,
                reason: row.try_get("reason")?,
                ticket: row.try_get("ticket")?,
                kind: row.try_get("kind")?,
                approvals_required: row.try_get("approvals_required")?,
                status: row.try_get("status")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                decided_at: row.try_get("decided_at")?,
                decided_by: row.try_get("decided_by")?,
                grant_id: row.try_get("grant_id")?,
                reviews: Vec::new(),
            })
        }

        fn review_from_row(row: &DbRow) -> StoreResult<AccessReviewRow> {
            Ok(AccessReviewRow {
                request_id: row.try_get("request_id")?,
                reviewer_id: row.try_get("reviewer_id")?,
                reviewer: row.try_get("reviewer")?,
                verdict: row.try_get("verdict")?,
                comment: row.try_get("comment")?,
                created_at: row.try_get("created_at")?,
            })
        }

        fn grant_from_row(row: &DbRow) -> StoreResult<GrantRow> {
            let resources: String = row.try_get("resources")?;
            Ok(GrantRow {
                id: row.try_get("id")?,
                request_id: row.try_get("request_id")?,
                principal_id: row.try_get("principal_id")?,
                principal: row.try_get("principal")?,
                resources: resources_from_text(&resources)?,
                approved_by: row.try_get("approved_by")?,
                reason: row.try_get("reason")?,
                kind: row.try_get("kind")?,
                starts_at: row.try_get("starts_at")?,
                expires_at: row.try_get("expires_at")?,
                revoked_at: row.try_get("revoked_at")?,
                revoked_by: row.try_get("revoked_by")?,
                revoke_reason: row.try_get("revoke_reason")?,
            })
        }

        pub(crate) async fn vault_settings(
            pool: &Pool<$db>,
            vault_id: &str,
        ) -> StoreResult<Option<String>> {
            let row = sqlx::query(&$sql("SELECT settings FROM vault_settings WHERE vault_id = ?"))
                .bind(vault_id)
                .fetch_optional(pool)
                .await?;
            Ok(row.map(|r| r.try_get("settings")).transpose()?)
        }

        pub(crate) async fn put_vault_settings(
            pool: &Pool<$db>,
            vault_id: &str,
            settings: &str,
            now: i64,
        ) -> StoreResult<()> {
            sqlx::query(&$sql(
                "INSERT INTO vault_settings (vault_id, settings, updated_at) VALUES (?, ?, ?) \
                 ON CONFLICT (vault_id) DO UPDATE SET settings = excluded.settings, \
                 updated_at = excluded.updated_at",
            ))
            .bind(vault_id)
            .bind(settings)
            .bind(now)
            .execute(pool)
            .await?;
            Ok(())
        }

        async fn insert_grant(conn: &mut Conn, grant: &GrantRow) -> StoreResult<()> {
            sqlx::query(&$sql(&format!(
                "INSERT INTO grants ({GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )))
            .bind(&grant.id)
            .bind(&grant.request_id)
            .bind(&grant.principal_id)
            .bind(&grant.principal)
            .bind(resources_text(&grant.resources)?)
            .bind(&grant.approved_by)
            .bind(&grant.reason)
            .bind(&grant.kind)
            .bind(grant.starts_at)
            .bind(grant.expires_at)
            .bind(grant.revoked_at)
            .bind(&grant.revoked_by)
            .bind(&grant.revoke_reason)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        pub(crate) async fn insert_access_request(
            pool: &Pool<$db>,
            request: &AccessRequestRow,
            grant: Option<&GrantRow>,
        ) -> StoreResult<()> {
            let mut tx = pool.begin_with($begin).await?;
            let inserted = sqlx::query(&$sql(&format!(
                "INSERT INTO access_requests ({REQUEST_COLUMNS}) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )))
            .bind(&request.id)
            .bind(&request.requester_id)
            .bind(&request.requester)
            .bind(resources_text(&request.resources)?)
            .bind(request.duration)
            .bind(&request.reason)
            .bind(&request.ticket)
            .bind(&request.kind)
            .bind(request.approvals_required)
            .bind(&request.status)
            .bind(request.created_at)
            .bind(request.expires_at)
            .bind(request.decided_at)
            .bind(&request.decided_by)
            .bind(&request.grant_id)
            .execute(&mut *tx)
            .await;
            match inserted {
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    return Err(StoreError::Conflict(format!("access request {}", request.id)));
                }
                other => {
                    other?;
                }
            }
            if let Some(grant) = grant {
                insert_grant(&mut tx, grant).await?;
            }
            tx.commit().await?;
            Ok(())
        }

        async fn load_request(
            conn: &mut Conn,
            id: &str,
            lock: bool,
        ) -> StoreResult<Option<AccessRequestRow>> {
            let text = format!(
                "SELECT {REQUEST_COLUMNS} FROM access_requests WHERE id = ?{}",
                if lock { $lock } else { "" }
            );
            let Some(row) = sqlx::query(&$sql(&text))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?
            else {
                return Ok(None);
            };
            let mut request = request_from_row(&row)?;
            let reviews = sqlx::query(&$sql(&format!(
                "SELECT {REVIEW_COLUMNS} FROM access_reviews WHERE request_id = ? \
                 ORDER BY created_at, reviewer_id"
            )))
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
            request.reviews = reviews.iter().map(review_from_row).collect::<StoreResult<_>>()?;
            Ok(Some(request))
        }

        pub(crate) async fn access_request(
            pool: &Pool<$db>,
            id: &str,
        ) -> StoreResult<Option<AccessRequestRow>> {
            let mut conn = pool.acquire().await?;
            load_request(&mut conn, id, false).await
        }

        pub(crate) async fn list_access_requests(
            pool: &Pool<$db>,
            filter: &AccessRequestFilter,
        ) -> StoreResult<Vec<AccessRequestRow>> {
            let mut text = format!("SELECT {REQUEST_COLUMNS} FROM access_requests WHERE 1 = 1");
            if filter.status.is_some() {
                text.push_str(" AND status = ?");
            }
            if filter.requester_id.is_some() {
                text.push_str(" AND requester_id = ?");
            }
            text.push_str(" ORDER BY created_at DESC, id DESC LIMIT ?");
            let text = $sql(&text);
            let mut query = sqlx::query(&text);
            if let Some(status) = &filter.status {
                query = query.bind(status);
            }
            if let Some(requester) = &filter.requester_id {
                query = query.bind(requester);
            }
            let rows = query
                .bind(i64::from(filter.limit.max(1)))
                .fetch_all(pool)
                .await?;
            let mut requests = rows.iter().map(request_from_row).collect::<StoreResult<Vec<_>>>()?;
            if requests.is_empty() {
                return Ok(requests);
            }
            // The reviews of the listed requests, in one query.
            let placeholders = vec!["?"; requests.len()].join(", ");
            let text = $sql(&format!(
                "SELECT {REVIEW_COLUMNS} FROM access_reviews WHERE request_id IN ({placeholders}) \
                 ORDER BY created_at, reviewer_id"
            ));
            let mut query = sqlx::query(&text);
            for request in &requests {
                query = query.bind(&request.id);
            }
            for row in query.fetch_all(pool).await? {
                let review = review_from_row(&row)?;
                if let Some(request) = requests.iter_mut().find(|r| r.id == review.request_id) {
                    request.reviews.push(review);
                }
            }
            Ok(requests)
        }

        pub(crate) async fn review_access_request(
            pool: &Pool<$db>,
            review: &AccessReviewRow,
            grant: &GrantRow,
            now: i64,
        ) -> StoreResult<ReviewOutcome> {
            let mut tx = pool.begin_with($begin).await?;
            let Some(request) = load_request(&mut tx, &review.request_id, true).await? else {
                return Ok(ReviewOutcome::NotFound);
            };
            if request.status != "pending" {
                return Ok(ReviewOutcome::NotPending(request));
            }
            if request.expires_at <= now {
                return Ok(ReviewOutcome::Expired(request));
            }
            if request.reviews.iter().any(|r| r.reviewer_id == review.reviewer_id) {
                return Ok(ReviewOutcome::AlreadyReviewed(request));
            }
            sqlx::query(&$sql(&format!(
                "INSERT INTO access_reviews ({REVIEW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
            )))
            .bind(&review.request_id)
            .bind(&review.reviewer_id)
            .bind(&review.reviewer)
            .bind(&review.verdict)
            .bind(&review.comment)
            .bind(review.created_at)
            .execute(&mut *tx)
            .await?;

            let mut created = None;
            if review.verdict == "deny" {
                sqlx::query(&$sql(
                    "UPDATE access_requests SET status = 'denied', decided_at = ?, decided_by = ? \
                     WHERE id = ?",
                ))
                .bind(now)
                .bind(&review.reviewer)
                .bind(&request.id)
                .execute(&mut *tx)
                .await?;
            } else {
                let approvals = request.approvals() + 1;
                if approvals >= request.approvals_required {
                    let approvers = request
                        .reviews
                        .iter()
                        .filter(|r| r.verdict == "approve")
                        .map(|r| r.reviewer.as_str())
                        .chain(std::iter::once(review.reviewer.as_str()))
                        .collect::<Vec<_>>()
                        .join(",");
                    let grant = GrantRow {
                        request_id: request.id.clone(),
                        principal_id: request.requester_id.clone(),
                        principal: request.requester.clone(),
                        resources: request.resources.clone(),
                        approved_by: approvers,
                        reason: request.reason.clone(),
                        kind: request.kind.clone(),
                        starts_at: now,
                        expires_at: now.saturating_add(request.duration),
                        revoked_at: None,
                        revoked_by: None,
                        revoke_reason: None,
                        ..grant.clone()
                    };
                    insert_grant(&mut tx, &grant).await?;
                    sqlx::query(&$sql(
                        "UPDATE access_requests SET status = 'approved', decided_at = ?, \
                         decided_by = ?, grant_id = ? WHERE id = ?",
                    ))
                    .bind(now)
                    .bind(&review.reviewer)
                    .bind(&grant.id)
                    .bind(&request.id)
                    .execute(&mut *tx)
                    .await?;
                    created = Some(grant);
                }
            }
            let request = load_request(&mut tx, &review.request_id, false)
                .await?
                .ok_or_else(|| StoreError::Corrupt("a reviewed request vanished".into()))?;
            tx.commit().await?;
            Ok(ReviewOutcome::Recorded {
                request,
                grant: created,
            })
        }

        pub(crate) async fn cancel_access_request(
            pool: &Pool<$db>,
            id: &str,
            by: &str,
            now: i64,
        ) -> StoreResult<Option<AccessRequestRow>> {
            let mut tx = pool.begin_with($begin).await?;
            let changed = sqlx::query(&$sql(
                "UPDATE access_requests SET status = 'cancelled', decided_at = ?, decided_by = ? \
                 WHERE id = ? AND status = 'pending'",
            ))
            .bind(now)
            .bind(by)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                return Ok(None);
            }
            let request = load_request(&mut tx, id, false).await?;
            tx.commit().await?;
            Ok(request)
        }

        pub(crate) async fn expire_access_requests(
            pool: &Pool<$db>,
            now: i64,
            limit: u32,
        ) -> StoreResult<Vec<AccessRequestRow>> {
            let mut tx = pool.begin_with($begin).await?;
            let ids = sqlx::query(&$sql(&format!(
                "SELECT id FROM access_requests WHERE status = 'pending' AND expires_at <= ? \
                 ORDER BY expires_at, id LIMIT ?{}",
                $lock
            )))
            .bind(now)
            .bind(i64::from(limit.max(1)))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<Vec<_>, _>>()?;
            let mut expired = Vec::with_capacity(ids.len());
            for id in ids {
                sqlx::query(&$sql(
                    "UPDATE access_requests SET status = 'expired', decided_at = ?, \
                     decided_by = 'system' WHERE id = ? AND status = 'pending'",
                ))
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
                if let Some(request) = load_request(&mut tx, &id, false).await? {
                    expired.push(request);
                }
            }
            tx.commit().await?;
            Ok(expired)
        }

        pub(crate) async fn live_grants(
            pool: &Pool<$db>,
            principal_id: &str,
            now: i64,
        ) -> StoreResult<Vec<GrantRow>> {
            let rows = sqlx::query(&$sql(&format!(
                "SELECT {GRANT_COLUMNS} FROM grants WHERE principal_id = ? AND expires_at > ? \
                 AND starts_at <= ? AND revoked_at IS NULL ORDER BY expires_at DESC, id"
            )))
            .bind(principal_id)
            .bind(now)
            .bind(now)
            .fetch_all(pool)
            .await?;
            rows.iter().map(grant_from_row).collect()
        }

        pub(crate) async fn grant(pool: &Pool<$db>, id: &str) -> StoreResult<Option<GrantRow>> {
            let row = sqlx::query(&$sql(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?")))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(grant_from_row).transpose()
        }

        pub(crate) async fn list_grants(
            pool: &Pool<$db>,
            filter: &GrantFilter,
        ) -> StoreResult<Vec<GrantRow>> {
            let mut text = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE 1 = 1");
            if filter.principal_id.is_some() {
                text.push_str(" AND principal_id = ?");
            }
            if filter.request_id.is_some() {
                text.push_str(" AND request_id = ?");
            }
            if filter.live_at.is_some() {
                text.push_str(" AND revoked_at IS NULL AND starts_at <= ? AND expires_at > ?");
            }
            text.push_str(" ORDER BY starts_at DESC, id DESC LIMIT ?");
            let text = $sql(&text);
            let mut query = sqlx::query(&text);
            if let Some(principal) = &filter.principal_id {
                query = query.bind(principal);
            }
            if let Some(request) = &filter.request_id {
                query = query.bind(request);
            }
            if let Some(now) = filter.live_at {
                query = query.bind(now).bind(now);
            }
            let rows = query
                .bind(i64::from(filter.limit.max(1)))
                .fetch_all(pool)
                .await?;
            rows.iter().map(grant_from_row).collect()
        }

        async fn revoke_grant_in(
            conn: &mut Conn,
            id: &str,
            by: &str,
            reason: &str,
            now: i64,
        ) -> StoreResult<Option<GrantRow>> {
            let changed = sqlx::query(&$sql(
                "UPDATE grants SET revoked_at = ?, revoked_by = ?, revoke_reason = ? \
                 WHERE id = ? AND revoked_at IS NULL AND expires_at > ?",
            ))
            .bind(now)
            .bind(by)
            .bind(reason)
            .bind(id)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if changed == 0 {
                return Ok(None);
            }
            let row = sqlx::query(&$sql(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?")))
                .bind(id)
                .fetch_one(&mut *conn)
                .await?;
            Ok(Some(grant_from_row(&row)?))
        }

        pub(crate) async fn revoke_grant(
            pool: &Pool<$db>,
            id: &str,
            by: &str,
            reason: &str,
            now: i64,
        ) -> StoreResult<Option<GrantRow>> {
            let mut tx = pool.begin_with($begin).await?;
            let grant = revoke_grant_in(&mut tx, id, by, reason, now).await?;
            tx.commit().await?;
            Ok(grant)
        }

        /// Revokes a principal's live grants and cancels its pending requests, inside the
        /// caller's transaction.
        pub(crate) async fn offboard_access(
            conn: &mut Conn,
            principal_id: &str,
            by: &str,
            now: i64,
        ) -> StoreResult<(Vec<GrantRow>, Vec<AccessRequestRow>)> {
            let grant_ids = sqlx::query(&$sql(
                "SELECT id FROM grants WHERE principal_id = ? AND revoked_at IS NULL \
                 AND expires_at > ? ORDER BY id",
            ))
            .bind(principal_id)
            .bind(now)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<Vec<_>, _>>()?;
            let mut grants = Vec::with_capacity(grant_ids.len());
            for id in grant_ids {
                if let Some(grant) = revoke_grant_in(conn, &id, by, "offboarded", now).await? {
                    grants.push(grant);
                }
            }
            let request_ids = sqlx::query(&$sql(
                "SELECT id FROM access_requests WHERE requester_id = ? AND status = 'pending' \
                 ORDER BY id",
            ))
            .bind(principal_id)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<Vec<_>, _>>()?;
            let mut requests = Vec::with_capacity(request_ids.len());
            for id in request_ids {
                sqlx::query(&$sql(
                    "UPDATE access_requests SET status = 'cancelled', decided_at = ?, \
                     decided_by = ? WHERE id = ? AND status = 'pending'",
                ))
                .bind(now)
                .bind(by)
                .bind(&id)
                .execute(&mut *conn)
                .await?;
                if let Some(request) = load_request(conn, &id, false).await? {
                    requests.push(request);
                }
            }
            Ok((grants, requests))
        }

        pub(crate) async fn unrecorded_grant_expiries(
            pool: &Pool<$db>,
            now: i64,
            limit: u32,
        ) -> StoreResult<Vec<GrantRow>> {
            let rows = sqlx::query(&$sql(&format!(
                "SELECT {GRANT_COLUMNS} FROM grants WHERE revoked_at IS NULL \
                 AND expiry_recorded_at IS NULL AND expires_at <= ? ORDER BY expires_at, id LIMIT ?"
            )))
            .bind(now)
            .bind(i64::from(limit.max(1)))
            .fetch_all(pool)
            .await?;
            rows.iter().map(grant_from_row).collect()
        }

        pub(crate) async fn mark_grant_expiry_recorded(
            pool: &Pool<$db>,
            id: &str,
            now: i64,
        ) -> StoreResult<bool> {
            let changed = sqlx::query(&$sql(
                "UPDATE grants SET expiry_recorded_at = ? WHERE id = ? AND expiry_recorded_at IS NULL",
            ))
            .bind(now)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(changed > 0)
        }
    };
}

pub(crate) mod sqlite {
    access_queries!(sqlx::Sqlite, crate::scim::same, "BEGIN IMMEDIATE", "");
}

pub(crate) mod postgres {
    access_queries!(
        sqlx::Postgres,
        crate::scim::numbered,
        "BEGIN",
        " FOR UPDATE"
    );
}
