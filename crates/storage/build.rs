// `sqlx::migrate!` embeds ../../migrations at compile time; without this a new migration file
// does not rebuild the crate, and a stale binary runs the old schema.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
