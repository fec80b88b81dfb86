import CLinux
import Glibc
import SeccompPolicy

extension SeccompFilter {
    /// Installs the SIGSYS handler and loads the filter, on every thread of the process (TSYNC).
    public static func load(_ program: Program, mode: Mode, reportFD: Int32) throws(Error) {
        if vmm_sigsys_install(reportFD, mode == .log ? 1 : 0) != 0 { throw Error(description: "sigaction(SIGSYS) failed") }
        let r = program.instructions.withUnsafeBytes { vmm_seccomp_load_bpf($0.baseAddress, $0.count / 8) }
        if r != 0 { throw Error(description: "loading the seccomp filter failed: \(String(cString: strerror(-r)))") }
    }
}
