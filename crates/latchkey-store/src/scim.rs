//! SCIM storage, written once for both backends: the macro below expands to the same
//! queries for SQLite and PostgreSQL, with placeholders rewritten for PostgreSQL.

/// Rewrites `?` placeholders to PostgreSQL's `$1`, `$2`, ... The queries in this module
/// contain no `?` inside string literals.
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn same(sql: &str) -> String {
    sql.to_string()
}

macro_rules! scim_queries {
    ($db:ty, $sql:path, $access:ident) => {
        use sqlx::{Pool, Row};

        use crate::{
            Offboarding, ScimGroupRow, ScimLink, ScimTokenRow, ScimUserRow, StoreError,
            StoreResult,
        };

        type DbRow = <$db as sqlx::Database>::Row;

        fn is_unique_violation(error: &sqlx::Error) -> bool {
            matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
        }

        const USER_COLUMNS: &str = "u.principal_id, u.external_id, u.user_name, u.email, \
             u.resource, u.version, u.created_at, u.updated_at, p.active";

        fn user_from_row(row: &DbRow) -> StoreResult<ScimUserRow> {
            Ok(ScimUserRow {
                principal_id: row.try_get("principal_id")?,
                external_id: row.try_get("external_id")?,
                user_name: row.try_get("user_name")?,
                email: row.try_get("email")?,
                resource: row.try_get("resource")?,
                version: row.try_get("version")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                active: row.try_get("active")?,
            })
        }

        pub(crate) async fn scim_user(pool: &Pool<$db>, id: &str) -> StoreResult<Option<ScimUserRow>> {
            let text = $sql(&format!(
                "SELECT {USER_COLUMNS} FROM scim_users u JOIN principals p ON p.id = u.principal_id \
                 WHERE u.principal_id = ?"
            ));
            let row = sqlx::query(&text).bind(id).fetch_optional(pool).await?;
            row.as_ref().map(user_from_row).transpose()
        }

        pub(crate) async fn scim_users(pool: &Pool<$db>) -> StoreResult<Vec<ScimUserRow>> {
            let text = format!(
                "SELECT {USER_COLUMNS} FROM scim_users u JOIN principals p ON p.id = u.principal_id \
                 ORDER BY u.created_at, u.principal_id"
            );
            let rows = sqlx::query(&text).fetch_all(pool).await?;
            rows.iter().map(user_from_row).collect()
        }

        pub(crate) async fn find_scim_user(
            pool: &Pool<$db>,
            link: ScimLink<'_>,
        ) -> StoreResult<Option<ScimUserRow>> {
            let (condition, value) = match link {
                ScimLink::ExternalId(v) => ("u.external_id = ?", v.to_string()),
                ScimLink::UserName(v) => ("u.user_name_key = ?", v.to_lowercase()),
                ScimLink::Email(v) => ("u.email = ?", v.to_lowercase()),
            };
            // Two users sharing an externalId or email is ambiguous, so no link is made.
            let text = $sql(&format!(
                "SELECT {USER_COLUMNS} FROM scim_users u JOIN principals p ON p.id = u.principal_id \
                 WHERE {condition} LIMIT 2"
            ));
            let rows = sqlx::query(&text).bind(value).fetch_all(pool).await?;
            match rows.as_slice() {
                [row] => Ok(Some(user_from_row(row)?)),
                _ => Ok(None),
            }
        }

        pub(crate) async fn put_scim_user(
            pool: &Pool<$db>,
            user: &ScimUserRow,
            expected_version: Option<i64>,
        ) -> StoreResult<()> {
            let mut tx = pool.begin().await?;
            let conflict = |e: sqlx::Error| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("user `{}`", user.user_name))
                } else {
                    e.into()
                }
            };
            // The principal exists already when the SCIM user adopts a principal that an
            // OIDC login or `lk user create` made; then only its name and flag change.
            sqlx::query(&$sql(
                "INSERT INTO principals (id, kind, name, active, created_at) VALUES (?, 'user', ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, active = excluded.active",
            ))
            .bind(&user.principal_id)
            .bind(&user.user_name)
            .bind(user.active)
            .bind(user.created_at)
            .execute(&mut *tx)
            .await
            .map_err(conflict)?;
            match expected_version {
                None => {
                    sqlx::query(&$sql(
                        "INSERT INTO scim_users (principal_id, external_id, user_name, user_name_key, \
                         email, resource, version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    ))
                    .bind(&user.principal_id)
                    .bind(&user.external_id)
                    .bind(&user.user_name)
                    .bind(user.user_name.to_lowercase())
                    .bind(&user.email)
                    .bind(&user.resource)
                    .bind(user.version)
                    .bind(user.created_at)
                    .bind(user.updated_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(conflict)?;
                }
                Some(expected) => {
                    let updated = sqlx::query(&$sql(
                        "UPDATE scim_users SET external_id = ?, user_name = ?, user_name_key = ?, \
                         email = ?, resource = ?, version = ?, updated_at = ? \
                         WHERE principal_id = ? AND version = ?",
                    ))
                    .bind(&user.external_id)
                    .bind(&user.user_name)
                    .bind(user.user_name.to_lowercase())
                    .bind(&user.email)
                    .bind(&user.resource)
                    .bind(user.version)
                    .bind(user.updated_at)
                    .bind(&user.principal_id)
                    .bind(expected)
                    .execute(&mut *tx)
                    .await
                    .map_err(conflict)?;
                    if updated.rows_affected() == 0 {
                        return Err(StoreError::Concurrent(format!("user `{}`", user.user_name)));
                    }
                }
            }
            tx.commit().await?;
            Ok(())
        }

        /// Replaces the principal's Cedar groups with the display names of the SCIM groups
        /// it belongs to.
        async fn sync_groups(
            tx: &mut sqlx::Transaction<'_, $db>,
            principal_id: &str,
        ) -> StoreResult<()> {
            sqlx::query(&$sql("DELETE FROM group_members WHERE principal_id = ?"))
                .bind(principal_id)
                .execute(&mut **tx)
                .await?;
            sqlx::query(&$sql(
                "INSERT INTO group_members (group_name, principal_id) \
                 SELECT DISTINCT g.display_name, m.principal_id FROM scim_group_members m \
                 JOIN scim_groups g ON g.id = m.group_id WHERE m.principal_id = ?",
            ))
            .bind(principal_id)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        pub(crate) async fn delete_scim_user(pool: &Pool<$db>, id: &str) -> StoreResult<bool> {
            let mut tx = pool.begin().await?;
            sqlx::query(&$sql("DELETE FROM scim_group_members WHERE principal_id = ?"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let deleted = sqlx::query(&$sql("DELETE FROM scim_users WHERE principal_id = ?"))
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if deleted > 0 {
                sync_groups(&mut tx, id).await?;
            }
            tx.commit().await?;
            Ok(deleted > 0)
        }

        async fn group_members(
            executor: impl sqlx::Executor<'_, Database = $db>,
            group_id: &str,
        ) -> StoreResult<Vec<String>> {
            let rows = sqlx::query(&$sql(
                "SELECT principal_id FROM scim_group_members WHERE group_id = ? ORDER BY principal_id",
            ))
            .bind(group_id)
            .fetch_all(executor)
            .await?;
            rows.iter()
                .map(|r| r.try_get::<String, _>("principal_id").map_err(StoreError::from))
                .collect()
        }

        fn group_from_row(row: &DbRow, members: Vec<String>) -> StoreResult<ScimGroupRow> {
            Ok(ScimGroupRow {
                id: row.try_get("id")?,
                display_name: row.try_get("display_name")?,
                external_id: row.try_get("external_id")?,
                resource: row.try_get("resource")?,
                version: row.try_get("version")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                members,
            })
        }

        pub(crate) async fn scim_group(pool: &Pool<$db>, id: &str) -> StoreResult<Option<ScimGroupRow>> {
            let row = sqlx::query(&$sql("SELECT * FROM scim_groups WHERE id = ?"))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            match row {
                Some(row) => Ok(Some(group_from_row(&row, group_members(pool, id).await?)?)),
                None => Ok(None),
            }
        }

        pub(crate) async fn scim_groups(pool: &Pool<$db>) -> StoreResult<Vec<ScimGroupRow>> {
            let rows = sqlx::query("SELECT * FROM scim_groups ORDER BY created_at, id")
                .fetch_all(pool)
                .await?;
            let mut groups = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: String = row.try_get("id")?;
                groups.push(group_from_row(row, group_members(pool, &id).await?)?);
            }
            Ok(groups)
        }

        pub(crate) async fn put_scim_group(
            pool: &Pool<$db>,
            group: &ScimGroupRow,
            expected_version: Option<i64>,
        ) -> StoreResult<()> {
            let mut tx = pool.begin().await?;
            let conflict = |e: sqlx::Error| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("group `{}`", group.display_name))
                } else {
                    e.into()
                }
            };
            match expected_version {
                None => {
                    sqlx::query(&$sql(
                        "INSERT INTO scim_groups (id, display_name, external_id, resource, version, \
                         created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    ))
                    .bind(&group.id)
                    .bind(&group.display_name)
                    .bind(&group.external_id)
                    .bind(&group.resource)
                    .bind(group.version)
                    .bind(group.created_at)
                    .bind(group.updated_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(conflict)?;
                }
                Some(expected) => {
                    let updated = sqlx::query(&$sql(
                        "UPDATE scim_groups SET display_name = ?, external_id = ?, resource = ?, \
                         version = ?, updated_at = ? WHERE id = ? AND version = ?",
                    ))
                    .bind(&group.display_name)
                    .bind(&group.external_id)
                    .bind(&group.resource)
                    .bind(group.version)
                    .bind(group.updated_at)
                    .bind(&group.id)
                    .bind(expected)
                    .execute(&mut *tx)
                    .await
                    .map_err(conflict)?;
                    if updated.rows_affected() == 0 {
                        return Err(StoreError::Concurrent(format!(
                            "group `{}`",
                            group.display_name
                        )));
                    }
                }
            }
            let mut affected = group_members(&mut *tx, &group.id).await?;
            sqlx::query(&$sql("DELETE FROM scim_group_members WHERE group_id = ?"))
                .bind(&group.id)
                .execute(&mut *tx)
                .await?;
            for member in &group.members {
                sqlx::query(&$sql(
                    "INSERT INTO scim_group_members (group_id, principal_id) VALUES (?, ?) \
                     ON CONFLICT DO NOTHING",
                ))
                .bind(&group.id)
                .bind(member)
                .execute(&mut *tx)
                .await?;
            }
            affected.extend(group.members.iter().cloned());
            affected.sort();
            affected.dedup();
            for principal_id in &affected {
                sync_groups(&mut tx, principal_id).await?;
            }
            tx.commit().await?;
            Ok(())
        }

        pub(crate) async fn delete_scim_group(pool: &Pool<$db>, id: &str) -> StoreResult<bool> {
            let mut tx = pool.begin().await?;
            let members = group_members(&mut *tx, id).await?;
            sqlx::query(&$sql("DELETE FROM scim_group_members WHERE group_id = ?"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let deleted = sqlx::query(&$sql("DELETE FROM scim_groups WHERE id = ?"))
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            for principal_id in &members {
                sync_groups(&mut tx, principal_id).await?;
            }
            tx.commit().await?;
            Ok(deleted > 0)
        }

        pub(crate) async fn offboard_principal(
            pool: &Pool<$db>,
            principal_id: &str,
            now: i64,
        ) -> StoreResult<Offboarding> {
            let mut tx = pool.begin().await?;
            sqlx::query(&$sql("UPDATE principals SET active = ? WHERE id = ?"))
                .bind(false)
                .bind(principal_id)
                .execute(&mut *tx)
                .await?;
            let rows = sqlx::query(&$sql(
                "UPDATE tokens SET revoked_at = ? \
                 WHERE principal_id = ? AND revoked_at IS NULL AND expires_at > ? \
                 RETURNING accessor",
            ))
            .bind(now)
            .bind(principal_id)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            let mut revoked_tokens = rows
                .iter()
                .map(|r| r.try_get::<String, _>("accessor"))
                .collect::<Result<Vec<_>, _>>()?;
            revoked_tokens.sort();
            let (revoked_grants, cancelled_requests) =
                crate::access::$access::offboard_access(&mut tx, principal_id, "offboarding", now).await?;
            tx.commit().await?;
            Ok(Offboarding {
                revoked_tokens,
                revoked_grants,
                cancelled_requests,
            })
        }

        fn scim_token_from_row(row: &DbRow) -> StoreResult<ScimTokenRow> {
            let hash: Vec<u8> = row.try_get("hash")?;
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| StoreError::Corrupt("SCIM token hash is not 32 bytes".into()))?;
            Ok(ScimTokenRow {
                accessor: row.try_get("accessor")?,
                hash,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                revoked_at: row.try_get("revoked_at")?,
                created_by: row.try_get("created_by")?,
            })
        }

        pub(crate) async fn insert_scim_token(pool: &Pool<$db>, token: &ScimTokenRow) -> StoreResult<()> {
            sqlx::query(&$sql(
                "INSERT INTO scim_tokens (accessor, hash, created_at, expires_at, revoked_at, created_by) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            ))
            .bind(&token.accessor)
            .bind(&token.hash[..])
            .bind(token.created_at)
            .bind(token.expires_at)
            .bind(token.revoked_at)
            .bind(&token.created_by)
            .execute(pool)
            .await?;
            Ok(())
        }

        pub(crate) async fn scim_token_by_hash(
            pool: &Pool<$db>,
            hash: &[u8; 32],
        ) -> StoreResult<Option<ScimTokenRow>> {
            let row = sqlx::query(&$sql("SELECT * FROM scim_tokens WHERE hash = ?"))
                .bind(&hash[..])
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(scim_token_from_row).transpose()
        }

        pub(crate) async fn list_scim_tokens(pool: &Pool<$db>) -> StoreResult<Vec<ScimTokenRow>> {
            let rows = sqlx::query("SELECT * FROM scim_tokens ORDER BY created_at, accessor")
                .fetch_all(pool)
                .await?;
            rows.iter().map(scim_token_from_row).collect()
        }

        pub(crate) async fn revoke_scim_token(
            pool: &Pool<$db>,
            accessor: &str,
            now: i64,
        ) -> StoreResult<bool> {
            let updated = sqlx::query(&$sql(
                "UPDATE scim_tokens SET revoked_at = ? WHERE accessor = ? AND revoked_at IS NULL",
            ))
            .bind(now)
            .bind(accessor)
            .execute(pool)
            .await?;
            Ok(updated.rows_affected() > 0)
        }
    };
}

pub(crate) mod sqlite {
    scim_queries!(sqlx::Sqlite, super::same, sqlite);
}

pub(crate) mod postgres {
    scim_queries!(sqlx::Postgres, super::numbered, postgres);
}
