import Glibc
import System
import XCTest

/// Output paths (serial.output, logger.log_path) are opened without following links, and an existing file is
/// written only when it is the user's own regular file with one link, or a FIFO or character device.
final class OutputFileTests: XCTestCase {
    var directory = ""

    override func setUpWithError() throws {
        var template = Array("/tmp/vmm-output-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw XCTSkip("mkdtemp failed") }
        directory = String(cString: made)
    }

    override func tearDown() {
        _ = system("rm -rf '\(directory)'")
    }

    func write(_ text: String, to path: String) throws {
        let fd = try FileDescriptor.open(path, O_WRONLY | O_CREAT | O_TRUNC)
        try fd.writeAll(Array(text.utf8))
    }

    func contents(_ path: String) -> String? { FileDescriptor.readText(path) }

    /// Why openOutput refused `path`, nil when it opened it (FileDescriptor is ~Copyable: XCTAssertThrowsError
    /// cannot hold one).
    func refusal(_ path: String, _ mode: FileDescriptor.OutputMode) -> String? {
        do { _ = try FileDescriptor.openOutput(path, mode); return nil } catch { return error.description }
    }

    func testASymbolicLinkIsRefusedAndItsTargetIsUntouched() throws {
        let victim = directory + "/victim", link = directory + "/console.log"
        try write("precious\n", to: victim)
        XCTAssertEqual(symlink(victim, link), 0)
        for mode in [FileDescriptor.OutputMode.truncate, .append] {
            let why = refusal(link, mode)
            XCTAssertTrue(why?.contains("is a symbolic link") == true, why ?? "opened")
        }
        XCTAssertEqual(contents(victim), "precious\n")
    }

    func testADanglingSymbolicLinkCreatesNothing() throws {
        let target = directory + "/created-through-link", link = directory + "/console.log"
        XCTAssertEqual(symlink(target, link), 0)
        XCTAssertNotNil(refusal(link, .truncate))
        XCTAssertNotEqual(access(target, F_OK), 0, "O_CREAT must not follow the link")
    }

    func testAHardLinkedFileIsRefusedAndUntouched() throws {
        let victim = directory + "/victim", link = directory + "/console.log"
        try write("precious\n", to: victim)
        XCTAssertEqual(Glibc.link(victim, link), 0)
        let why = refusal(link, .truncate)
        XCTAssertTrue(why?.contains("has 2 hard links") == true, why ?? "opened")
        XCTAssertEqual(contents(victim), "precious\n")
    }

    func testAnotherUsersFileIsRefused() throws {
        guard geteuid() == 0 else { throw XCTSkip("needs root to give a file to another uid") }
        let path = directory + "/console.log"
        try write("theirs\n", to: path)
        XCTAssertEqual(chown(path, 12345, 12345), 0)
        let why = refusal(path, .truncate)
        XCTAssertTrue(why?.contains("belongs to uid 12345") == true, why ?? "opened")
        XCTAssertEqual(contents(path), "theirs\n")
    }

    func testAnOwnFileIsTruncatedOrAppendedTo() throws {
        let path = directory + "/console.log"
        try write("old\n", to: path)
        do {
            let fd = try FileDescriptor.openOutput(path, .append)
            try fd.writeAll(Array("more\n".utf8))
        }
        XCTAssertEqual(contents(path), "old\nmore\n")
        do {
            let fd = try FileDescriptor.openOutput(path, .truncate)
            try fd.writeAll(Array("new\n".utf8))
        }
        XCTAssertEqual(contents(path), "new\n")
    }

    func testANewFileIsPrivateToItsUser() throws {
        let path = directory + "/new.log"
        _ = try FileDescriptor.openOutput(path, .truncate)
        var st = stat()
        XCTAssertEqual(stat(path, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
    }

    func testDevNullAndFIFOsAreUsedAsTheyAreAndDirectoriesAreRefused() throws {
        XCTAssertNil(refusal("/dev/null", .truncate))
        let fifo = directory + "/fifo"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        let reader = try FileDescriptor.open(fifo, O_RDONLY | O_NONBLOCK)  // so that the writer's open does not wait
        XCTAssertNil(refusal(fifo, .truncate))
        _ = consume reader
        XCTAssertNotNil(refusal(directory, .append))
    }

    func testReadAllRefusesAFileLargerThanTheLimitBeforeReading() throws {
        let path = directory + "/kernel"
        try write(String(repeating: "k", count: 4097), to: path)
        let fd = try FileDescriptor.open(path, O_RDONLY)
        XCTAssertEqual(try fd.readAll(atMost: 4097).count, 4097)
        do { _ = try fd.readAll(atMost: 4096); XCTFail("read past the limit") } catch {
            XCTAssertEqual(error.errno, EFBIG)
            XCTAssertTrue(error.description.contains("4097 bytes, more than the limit of 4096"), error.description)
        }
    }
}
