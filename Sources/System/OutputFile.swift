import CLinux
import Glibc

/// Why a file vmm was told to write to (the console output, the log) was not opened.
public struct OutputFileError: Error, CustomStringConvertible, Equatable, Sendable {
    public let path: String
    public let reason: String

    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }

    public var description: String { "\(path): \(reason)" }
}

extension FileDescriptor {
    /// What happens to an existing regular file: emptied first, or written at its end.
    public enum OutputMode: Sendable { case truncate, append }

    /// Opens a path a config names for vmm to write to. vmm runs with its user's full rights and writes
    /// guest-controlled bytes there, so neither the config nor a link planted in a shared directory (/tmp) may turn
    /// that into a write to some other file:
    ///
    /// - a symbolic link as the last component is refused (O_NOFOLLOW), not followed; directories above it are
    ///   resolved as usual;
    /// - an existing regular file must belong to the effective user and have exactly one link (a planted hard link
    ///   to another file of the user's is refused); `.truncate` empties it only after these checks, `.append`
    ///   writes at its end;
    /// - a FIFO or a character device (`/dev/null`, a terminal) is used as it is, never truncated; opening a FIFO
    ///   waits for its reader, as a shell redirection does; anything else (a directory, a socket, a block device)
    ///   is refused;
    /// - a new file is created with mode 0600 (console output can carry secrets).
    public static func openOutput(_ path: String, _ mode: OutputMode) throws(OutputFileError) -> FileDescriptor {
        func fail(_ reason: String) -> OutputFileError { OutputFileError(path: path, reason: reason) }
        guard !path.isEmpty else { throw fail("empty path") }
        // No O_TRUNC here: a file is emptied only once it is known to be the user's own.
        let flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_NOCTTY | (mode == .append ? O_APPEND : 0)
        let fd: FileDescriptor
        do { fd = try open(path, flags, mode: 0o600) } catch {
            if error.errno == ELOOP {
                throw fail("is a symbolic link; output files are opened without following links (name the file itself)")
            }
            throw fail(String(cString: strerror(error.errno)))
        }
        var st = stat()
        guard fstat(fd.raw, &st) == 0 else { throw fail("fstat: \(String(cString: strerror(Glibc.errno)))") }
        switch st.st_mode & S_IFMT {
        case S_IFREG:
            guard st.st_uid == geteuid() else {
                throw fail("belongs to uid \(st.st_uid), not to the user running vmm (uid \(geteuid())); remove it or name another file")
            }
            guard st.st_nlink == 1 else { throw fail("has \(st.st_nlink) hard links; vmm writes only to a file with one") }
            if mode == .truncate {
                do { try fd.truncate(to: 0) } catch { throw fail(error.description) }
            }
        case S_IFIFO, S_IFCHR:
            break
        default:
            throw fail("is not a regular file, a FIFO or a character device")
        }
        return fd
    }
}
