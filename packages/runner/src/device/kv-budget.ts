/**
 * The device memory a model's KV stores may take (bytes): every sequence's store stays on the
 * device while the total fits; a store whose growth would pass it goes to pinned host memory
 * instead (the pinned tier, read by the kernels over the bus) and comes back at a later growth
 * if room was freed.
 */
export class DeviceKvBudget {
  /** Bytes of the device-resident stores now. */
  used = 0;
  constructor(readonly limit: number) {}
}
