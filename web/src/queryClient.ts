import { QueryClient } from "@tanstack/react-query";

/** The app's one QueryClient (created in main.tsx; tests make their own). */
export function createQueryClient(): QueryClient {
  return new QueryClient({
    defaultOptions: {
      queries: {
        // An API error is shown at once, as the API said it; a wrong key or a
        // 404 does not get better by asking again.
        retry: false,
        // Pages refetch when they are opened and poll what is still running;
        // switching windows does not refetch.
        refetchOnWindowFocus: false,
      },
      mutations: { retry: false },
    },
  });
}
