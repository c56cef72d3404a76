//! The CNI runtime side: conflists, plugin exec (ADD, DEL, CHECK, GC).
