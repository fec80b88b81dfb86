import CLinux
import Glibc

/// The program's code as this process maps it: vmm's executable segment and those of the libraries it loads.
///
/// The kernel maps a file's pages around each page fault (fault-around, 64 KiB windows), so a process that ran its
/// start-up maps several times the code it goes on running, and every one of those pages counts in its PSS. A
/// process whose start-up is over releases its mappings once: the code it still runs comes back on first use,
/// from the page cache (a minor fault, no disk read), and nothing else does. The page cache itself is unchanged.
public enum ProgramCode {
    /// Unmaps every page of program code this process maps (all threads see it; one that runs code meanwhile just
    /// faults it back in). Safe for code: it is never written (an object with text relocations is left alone).
    public static func releaseMappings() throws(SystemError) {
        _ = try syscallRetrying("madvise(MADV_DONTNEED) of the program's code") { vmm_release_code_mappings() }
    }
}
