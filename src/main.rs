fn main() {
    println!("dlm-engine");
}
