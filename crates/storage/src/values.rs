//! Router inserts: multi-row `INSERT … VALUES` statements. On Citus such a statement, every row
//! of one organization, goes to that organization's shard as it is, where the one-PostgreSQL
//! form, `INSERT … SELECT FROM unnest(…)`, is pulled through the coordinator first. Used where
//! [`crate::Layout::ByOrganization`] writes rows: publishing (`events::routed`), the record's
//! attempt rows and the metrics rollups.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, PgConnection, Postgres};

/// A routed insert: the text before `VALUES`, the text after the rows, parameters per row.
pub type Statement = (&'static str, &'static str, usize);

/// Most rows in one statement. Statements come in sizes 1, 2, 4, … up to this, so a connection
/// prepares a handful of texts per table however many rows its publishes carry.
const MAX_ROWS_PER_STATEMENT: usize = 64;

/// The rows of a statement taking `left` rows: the largest power of two that fits, at most
/// [`MAX_ROWS_PER_STATEMENT`].
fn rows_per_statement(left: usize) -> usize {
    debug_assert!(left > 0);
    let below = 1 << (usize::BITS - 1 - left.leading_zeros());
    below.min(MAX_ROWS_PER_STATEMENT)
}

/// `head VALUES ($1, …), (…) tail`: `rows` rows of `columns` parameters each. Public so
/// tests/citus.rs can read the plans of the very statements sent.
pub fn values_statement(head: &str, tail: &str, columns: usize, rows: usize) -> String {
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * columns * 6 + 8);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", row * columns + column + 1));
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

type Insert<'a> = Query<'a, Postgres, PgArguments>;

/// [`values_statement`] over `rows`, in as few statements as [`rows_per_statement`] allows, in
/// order; `bind` binds one row's `columns` values. Returns what the statements return.
pub async fn insert_rows<'a, R>(
    conn: &mut PgConnection,
    (head, tail, columns): Statement,
    rows: &'a [R],
    bind: impl Fn(Insert<'a>, &'a R) -> Insert<'a>,
) -> Result<Vec<PgRow>, sqlx::Error> {
    let mut returned = Vec::new();
    let mut left = rows;
    while !left.is_empty() {
        let (chunk, rest) = left.split_at(rows_per_statement(left.len()));
        let mut insert = sqlx::query(AssertSqlSafe(values_statement(
            head,
            tail,
            columns,
            chunk.len(),
        )));
        for row in chunk {
            insert = bind(insert, row);
        }
        returned.extend(insert.fetch_all(&mut *conn).await?);
        left = rest;
    }
    Ok(returned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_come_in_powers_of_two_up_to_the_cap() {
        let sizes = |mut left: usize| {
            let mut sizes = Vec::new();
            while left > 0 {
                let n = rows_per_statement(left);
                sizes.push(n);
                left -= n;
            }
            sizes
        };
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(7), [4, 2, 1]);
        assert_eq!(sizes(64), [64]);
        assert_eq!(sizes(200), [64, 64, 64, 8]);
    }

    #[test]
    fn a_values_statement_numbers_its_parameters_row_by_row() {
        assert_eq!(
            values_statement("INSERT INTO t (a, b)", " RETURNING a", 2, 2),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) RETURNING a"
        );
    }
}
