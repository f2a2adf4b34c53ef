//! Where a tenant's quota tables live, and how SQL names them.
//!
//! Tally's own tables (`tally_*`) always live in the base schema and are named unqualified:
//! every pooled connection's `search_path` is the base schema. The quota tables live in the
//! base schema too in shared tenancy, and in the tenant's own schema in schema tenancy,
//! where SQL names them qualified by a schema name built from the tenant's internal id
//! only (`tally_domain::quota::schema_name_for`) and always double-quoted.

use sqlx::PgExecutor;
use tally_domain::TenantId;
use tally_domain::quota::schema_name_for;
use tally_store::StoreError;

use crate::rows::{get, map_err};
use crate::{PgStore, Tenancy};

/// The schema holding one tenant's quota tables.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Scope {
    /// The base schema (shared tenancy): tables are named unqualified.
    Base,
    /// A tenant's own schema (schema tenancy), `tenant_<16 hex>`.
    Tenant(String),
}

impl Scope {
    /// The schema of the tenant with this internal id, in schema tenancy.
    pub(crate) fn of_internal_id(internal_id: u64) -> Scope {
        Scope::Tenant(schema_name_for(internal_id))
    }

    /// The usage records table, as SQL names it.
    pub(crate) fn records(&self) -> String {
        self.table("quota_usage_record")
    }

    /// The usage events table, as SQL names it.
    pub(crate) fn events(&self) -> String {
        self.table("quota_usage_event")
    }

    fn table(&self, table: &str) -> String {
        match self {
            Scope::Base => table.to_owned(),
            Scope::Tenant(schema) => {
                debug_assert!(is_tenant_schema_name(schema), "{schema}");
                format!("\"{schema}\".{table}")
            }
        }
    }
}

/// True for `tenant_` and 16 lowercase hex digits: the only tenant schema names.
pub(crate) fn is_tenant_schema_name(name: &str) -> bool {
    name.strip_prefix("tenant_").is_some_and(|hex| {
        hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A tenant's internal id as stored: the `u64`'s bits in a `bigint`.
pub(crate) fn internal_id_from_db(stored: i64) -> u64 {
    stored.cast_unsigned()
}

/// A tenant's internal id as it is stored.
pub(crate) fn internal_id_to_db(internal_id: u64) -> i64 {
    internal_id.cast_signed()
}

impl PgStore {
    /// Where `tenant`'s quota tables live; `None` when, in schema tenancy, there is no such
    /// tenant (and so no schema). Shared tenancy asks the database nothing, and schema
    /// tenancy asks once per tenant (a tenant's internal id never changes).
    pub(crate) async fn scope_of<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        tenant: &TenantId,
    ) -> Result<Option<Scope>, StoreError> {
        if self.tenancy == Tenancy::Shared {
            return Ok(Some(Scope::Base));
        }
        if let Some(scope) = self.scopes.read().unwrap_or_else(|p| p.into_inner()).get(tenant) {
            return Ok(Some(scope.clone()));
        }
        let row = self
            .log
            .query("SELECT internal_id FROM tally_tenant WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_optional(executor)
            .await
            .map_err(map_err)?;
        match row {
            None => Ok(None),
            Some(row) => {
                let scope = Scope::of_internal_id(internal_id_from_db(get(&row, "internal_id")?));
                self.scopes.write().unwrap_or_else(|p| p.into_inner()).insert(tenant.clone(), scope.clone());
                Ok(Some(scope))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_tables_are_qualified_by_a_quoted_schema_from_the_internal_id() {
        let scope = Scope::of_internal_id(0xdead_beef);
        assert_eq!(scope.records(), "\"tenant_00000000deadbeef\".quota_usage_record");
        assert_eq!(Scope::Base.events(), "quota_usage_event");
        assert!(is_tenant_schema_name("tenant_00000000deadbeef"));
        assert!(!is_tenant_schema_name("tenant_00000000DEADBEEF"));
        assert!(!is_tenant_schema_name("tenant_x\"; drop"));
    }

    #[test]
    fn internal_ids_keep_all_64_bits() {
        for id in [0, 1, u64::MAX, 1 << 63] {
            assert_eq!(internal_id_from_db(internal_id_to_db(id)), id);
        }
    }
}
