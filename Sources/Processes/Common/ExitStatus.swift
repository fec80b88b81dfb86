/// vmm's exit statuses. Odd values 1...255 belong to the guest's debug-exit writes ((V << 1) | 1);
/// the VMM's own outcomes are even so that the two never collide.
public enum ExitStatus {
    public static let configError: Int32 = 2
    public static let hostError: Int32 = 4
    public static let tripleFault: Int32 = 6
    public static let vcpuError: Int32 = 8
    public static let helperDied: Int32 = 10
    public static let guestHalted: Int32 = 12
    public static let interrupted: Int32 = 130
    public static let terminated: Int32 = 143
}
