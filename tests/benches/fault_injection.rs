//! Fault injection with an oracle (issue 15): see the module docs once written.

fn main() {
    println!("fault_injection: not written yet");
}
