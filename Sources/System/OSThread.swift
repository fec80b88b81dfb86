import CLinux
import Glibc

/// A dedicated OS thread (pthread), for work that blocks in the kernel, such as KVM_RUN: never a Swift
/// concurrency pool thread.
public final class OSThread: @unchecked Sendable {
    private var thread = pthread_t()
    private let body: () -> Void
    private let name: String

    private init(name: String, body: @escaping () -> Void) {
        self.name = name
        self.body = body
    }

    /// Starts `body` on a new thread named `name` (at most 15 characters show) with `stackSize` bytes of stack.
    public static func start(name: String, stackSize: Int = 8 << 20, _ body: @escaping () -> Void) throws(SystemError) -> OSThread {
        let t = OSThread(name: name, body: body)
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        defer { pthread_attr_destroy(&attr) }
        pthread_attr_setstacksize(&attr, stackSize)
        let context = Unmanaged.passRetained(t).toOpaque()
        let r = pthread_create(&t.thread, &attr, { raw in
            let me = Unmanaged<OSThread>.fromOpaque(raw!).takeRetainedValue()
            me.name.withCString { _ = vmm_prctl5(VMM_PR_SET_NAME, UInt(bitPattern: $0), 0, 0, 0) }
            me.body()
            return nil
        }, context)
        if r != 0 {
            Unmanaged<OSThread>.fromOpaque(context).release()
            throw SystemError("pthread_create", errno: r)
        }
        return t
    }

    /// Waits for the thread to finish.
    public func join() {
        pthread_join(thread, nil)
    }
}
