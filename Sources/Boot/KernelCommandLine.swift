/// Edits of a guest kernel's command line. Options the VMM adds go before a ` -- `: what follows it is the init
/// program's, and the kernel would hand it options it does not know.
public enum KernelCommandLine {
    public static func inserting(_ options: [String], into cmdline: String) -> String {
        guard !options.isEmpty else { return cmdline }
        var words = cmdline.split(separator: " ").map(String.init)
        words.insert(contentsOf: options, at: words.firstIndex(of: "--") ?? words.endIndex)
        return words.joined(separator: " ")
    }
}
