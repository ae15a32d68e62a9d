import Foundation

/// The function libFuzzer calls with each input.
public typealias FuzzTarget = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt

#if FUZZING
/// libFuzzer's driver. SwiftPM names an executable's entry point itself, so libFuzzer's own
/// `main` cannot be used; its driver is called from ours instead.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: FuzzTarget
) -> CInt
#endif

/// The fuzz executables' `main`: built with `-DFUZZING` (and `-sanitize=fuzzer`), libFuzzer with
/// the command line's options; otherwise a replayer that runs `target` on each file named.
public func fuzzMain(_ target: FuzzTarget) -> Never {
    #if FUZZING
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, target))
    #else
    for path in CommandLine.arguments.dropFirst() {
        guard let data = FileManager.default.contents(atPath: path) else {
            FileHandle.standardError.write(Data("cannot read \(path)\n".utf8))
            exit(2)
        }
        _ = data.withUnsafeBytes { raw in target(raw.bindMemory(to: UInt8.self).baseAddress, raw.count) }
        print("ok \(path)")
    }
    exit(0)
    #endif
}
