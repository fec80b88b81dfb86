/// A seccomp policy in the text format of `Policies/*.policy` (modelled on minijail's):
///
///     # why the role needs it
///     read: 1
///     ioctl: arg1 == KVM_RUN || arg1 == KVM_GET_REGS
///     fcntl: arg1 == F_GETFL || (arg1 == F_SETFL && arg2 == O_NONBLOCK)   -- no parentheses: && binds tighter
///     @include common.policy
///
/// `1` allows the call; `return ENOSYS` makes it fail with that errno; otherwise the expression is a disjunction (`||`) of conjunctions (`&&`) of comparisons
/// `argN OP VALUE` with OP one of == != < <= > >=, or `argN & BITS` (all of BITS set). Values are integers or names
/// from a constant table. Every rule needs a comment saying why: on the line above or at the end of its line.
/// The filter tests the rules in the file's order (its includes where they stand), and a first clause's leading
/// `==` before the rule's other tests (SeccompFilter.compile).
public struct Policy: Equatable, Sendable {
    public struct Comparison: Equatable, Sendable {
        public enum Op: String, Sendable, CaseIterable { case eq = "==", ne = "!=", le = "<=", lt = "<", ge = ">=", gt = ">", allBits = "&" }
        public let argument: Int
        public let op: Op
        public let value: UInt64
    }

    public struct Rule: Equatable, Sendable {
        public let syscall: String
        /// Empty: always allowed. Otherwise allowed when any clause has all its comparisons true.
        public let clauses: [[Comparison]]
        /// `return ERRNO`: the call fails with this errno instead (e.g. clone3, so that glibc falls back to clone,
        /// whose flags a filter can see).
        public let errno: Int32?
        public let line: Int
        public let comment: String

        /// Arguments that meet the rule's first clause (all zero for a rule without one), where its comparisons
        /// test different arguments: a call the rule allows.
        public var firstCaseArguments: [UInt64] {
            var arguments = [UInt64](repeating: 0, count: 6)
            for c in clauses.first ?? [] {
                switch c.op {
                case .eq, .le, .ge, .allBits: arguments[c.argument] = c.value
                case .ne, .gt: arguments[c.argument] = c.value &+ 1
                case .lt: arguments[c.argument] = c.value &- 1
                }
            }
            return arguments
        }
    }

    public var rules: [Rule]

    /// A policy problem with the file and line it is on.
    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public let file: String
        public let line: Int
        public let reason: String
        public var description: String { "\(file):\(line): \(reason)" }
    }

    /// Parses policy text whose `@include`s were already expanded (see `PolicySource`).
    /// `constants` names the values a rule may use; `requireComments` enforces the comment on every rule.
    public static func parse(_ text: String, file: String, constants: [String: UInt64],
                             requireComments: Bool = true) throws(ParseError) -> Policy {
        var rules: [Rule] = []
        var lastComment = ""
        var currentFile = file
        var lineInFile = 0
        for raw in text.lines {
            lineInFile += 1
            var line = String(raw)
            if line.hasPrefix("#@file ") {  // marker left by include expansion
                let parts = line.dropFirst(7).split(separator: " ")
                currentFile = parts.first.map(String.init) ?? file
                lineInFile = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
                lastComment = ""
                continue
            }
            var comment = ""
            if let hash = line.firstIndex(of: "#") {
                comment = line[line.index(after: hash)...].trimmingCharacters(in: " \t")
                line = String(line[..<hash])
            }
            line = line.trimmingCharacters(in: " \t\r")
            if line.isEmpty {
                lastComment = comment.isEmpty ? (raw.trimmingCharacters(in: " \t").isEmpty ? "" : lastComment) : comment
                continue
            }
            let why = comment.isEmpty ? lastComment : comment
            lastComment = ""
            func fail(_ reason: String) -> ParseError { ParseError(file: currentFile, line: lineInFile, reason: reason) }
            guard let colon = line.firstIndex(of: ":") else { throw fail("expected 'syscall: expression'") }
            let name = line[..<colon].trimmingCharacters(in: " \t")
            guard !name.isEmpty, name.utf8.allSatisfy(isNameByte) else {
                throw fail("bad syscall name '\(name)'")
            }
            if requireComments && why.isEmpty { throw fail("rule for \(name) has no comment saying why the role needs it") }
            let expression = line[line.index(after: colon)...].trimmingCharacters(in: " \t")
            var clauses: [[Comparison]] = []
            var errno: Int32?
            if expression.hasPrefix("return ") {
                let name = expression.dropFirst(7).trimmingCharacters(in: " \t")
                guard let v = constants[name] ?? parseNumber(name), v > 0, v < 4096 else { throw fail("unknown errno '\(name)'") }
                errno = Int32(v)
            } else if expression != "1" {
                for clauseText in expression.pieces(between: "||") {
                    var clause: [Comparison] = []
                    for term in clauseText.pieces(between: "&&") {
                        clause.append(try comparison(term.trimmingCharacters(in: " \t"), constants: constants, fail: fail))
                    }
                    clauses.append(clause)
                }
            }
            if rules.contains(where: { $0.syscall == name }) { throw fail("second rule for \(name); join them with ||") }
            rules.append(Rule(syscall: name, clauses: clauses, errno: errno, line: lineInFile, comment: why))
        }
        return Policy(rules: rules)
    }

    private static func comparison(_ term: String, constants: [String: UInt64],
                                   fail: (String) -> ParseError) throws(ParseError) -> Comparison {
        guard term.hasPrefix("arg"), let digit = term.dropFirst(3).first, let n = Int(String(digit)), (0...5).contains(n) else {
            throw fail("expected arg0..arg5 in '\(term)'")
        }
        let rest = term.dropFirst(4).trimmingCharacters(in: " \t")
        guard let op = Comparison.Op.allCases.first(where: { rest.hasPrefix($0.rawValue) }) else {
            throw fail("expected one of == != < <= > >= & in '\(term)'")
        }
        let valueText = rest.dropFirst(op.rawValue.count).trimmingCharacters(in: " \t")
        var value: UInt64 = 0
        for part in valueText.split(separator: "|") {  // NAME|NAME or numbers, OR-ed together
            let p = part.trimmingCharacters(in: " \t")
            if let v = constants[p] { value |= v } else if let v = parseNumber(p) { value |= v } else {
                throw fail("unknown value '\(p)'")
            }
        }
        if valueText.isEmpty { throw fail("missing value in '\(term)'") }
        return Comparison(argument: n, op: op, value: value)
    }

    /// A syscall name's characters: ASCII letters, digits and underscores.
    private static func isNameByte(_ b: UInt8) -> Bool {
        b == UInt8(ascii: "_") || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b)
            || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(b | 0x20)
    }

    static func parseNumber(_ s: String) -> UInt64? {
        if s.hasPrefix("0x") { return UInt64(s.dropFirst(2), radix: 16) }
        if s.hasPrefix("-"), let v = Int64(s) { return UInt64(bitPattern: v) }
        return UInt64(s)
    }
}

/// Reads a role's policy file and expands its `@include`s into one text (the helper gets the text: after
/// its jail it can open no files).
public enum PolicySource {
    public struct LoadError: Error, CustomStringConvertible { public let description: String }

    public static func load(_ file: String, directory: String, reader: (String) -> String?) throws(LoadError) -> String {
        var seen: [String] = []
        return try expand(file, directory: directory, reader: reader, seen: &seen)
    }

    private static func expand(_ file: String, directory: String, reader: (String) -> String?,
                               seen: inout [String]) throws(LoadError) -> String {
        guard !seen.contains(file) else { throw LoadError(description: "\(file): @include cycle through \(seen.joined(separator: " -> "))") }
        guard !file.contains("/") else { throw LoadError(description: "\(file): includes name files in the policy directory only") }
        guard let text = reader(directory + "/" + file) else { throw LoadError(description: "\(directory)/\(file): cannot read") }
        seen.append(file)
        defer { seen.removeLast() }
        // "#@file NAME N" tells the parser that the next line is line N+1 of NAME, so errors name the right place.
        var out = ["#@file \(file) 0"]
        for (i, line) in text.lines.enumerated() {
            if let included = includedFile(line) {
                out.append(try expand(included, directory: directory, reader: reader, seen: &seen))
                out.append("#@file \(file) \(i + 1)")
            } else {
                out.append(String(line))
            }
        }
        return out.joined(separator: "\n")
    }

    /// The files a policy text includes directly, in order.
    public static func includes(of text: String) -> [String] { text.lines.compactMap(includedFile) }

    /// The file an `@include` line names; nil for any other line.
    private static func includedFile(_ line: Substring) -> String? {
        let trimmed = line.trimmingCharacters(in: " \t")
        guard trimmed.hasPrefix("@include ") else { return nil }
        return trimmed.dropFirst(9).trimmingCharacters(in: " \t")
    }
}

extension StringProtocol {
    /// `self` without the leading and trailing characters of `set`, which must be ASCII (the policy format's
    /// blanks). Works on the UTF-8 bytes: an ASCII byte is never part of a longer character, and going by
    /// `Character` (grapheme breaking, a `Set` per call) made parsing the launcher's filters cost milliseconds of
    /// every VM's start.
    func trimmingCharacters(in set: StaticString) -> String {
        let blanks = UnsafeBufferPointer(start: set.utf8Start, count: set.utf8CodeUnitCount)
        let text = Substring(self), bytes = text.utf8
        var start = bytes.startIndex, end = bytes.endIndex
        while start < end, blanks.contains(bytes[start]) { bytes.formIndex(after: &start) }
        while start < end {
            let last = bytes.index(before: end)
            guard blanks.contains(bytes[last]) else { break }
            end = last
        }
        return String(text[start..<end])
    }

    /// The pieces of `self` between the occurrences of `separator` (ASCII), empty ones dropped, as `split` does
    /// with a string separator; on the UTF-8 bytes, without the generic collection search that split uses.
    func pieces(between separator: StaticString) -> [Substring] {
        let mark = UnsafeBufferPointer(start: separator.utf8Start, count: separator.utf8CodeUnitCount)
        let text = Substring(self), bytes = text.utf8
        var pieces: [Substring] = []
        var pieceStart = bytes.startIndex, i = bytes.startIndex
        while i < bytes.endIndex {
            if bytes[i...].starts(with: mark) {
                if pieceStart < i { pieces.append(text[pieceStart..<i]) }
                i = bytes.index(i, offsetBy: mark.count)
                pieceStart = i
            } else {
                bytes.formIndex(after: &i)
            }
        }
        if pieceStart < bytes.endIndex { pieces.append(text[pieceStart..<bytes.endIndex]) }
        return pieces
    }

    /// The lines of `self` (split at every newline, empty ones kept), split on the UTF-8 bytes.
    var lines: [Substring] {
        let text = Substring(self)
        return text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map { Substring($0) }
    }
}
