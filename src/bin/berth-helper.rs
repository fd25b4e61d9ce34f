fn main() {
    berth::helper::main()
}
