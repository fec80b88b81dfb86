/// vmm's exit statuses. Odd values 1...255 belong to the guest's debug-exit writes ((V << 1) | 1);
/// the VMM's own outcomes are even so that the two never collide.
public enum ExitStatus {
    /// Every vCPU halted with interrupts off: how Linux powers off (and halts) without ACPI.
    public static let poweredOff: Int32 = 0
    public static let configError: Int32 = 2
    public static let hostError: Int32 = 4
    public static let tripleFault: Int32 = 6
    public static let vcpuError: Int32 = 8
    public static let helperDied: Int32 = 10
    /// The guest pulsed the CPU reset line (i8042), as Linux's `reboot` does with `reboot=k`.
    public static let guestReboot: Int32 = 14
    /// The guest kernel panicked ("Kernel panic - not syncing" on its console).
    public static let guestPanic: Int32 = 16
    public static let interrupted: Int32 = 130
    public static let terminated: Int32 = 143
}
